"""The item tower, the user encoders and the model that pairs them."""
