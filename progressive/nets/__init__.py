"""The networks: scaled layers and normalisations, the progressive networks, the paper's reference networks."""
