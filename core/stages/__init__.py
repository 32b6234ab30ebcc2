"""What a model goes through: central pretraining, a site's federated round, a site alone, FedBN's kept layers,
ensembles of saved models, and a site's acceptance checks."""
