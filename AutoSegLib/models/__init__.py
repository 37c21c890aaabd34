"""models stage: model folders (`folder.load_model`), archives, nnU-Net import."""
