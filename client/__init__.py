"""The hospital client: data loading, ResNet50 model, DP training, privacy ledger, Flower client, menu."""
