"""The three stage definitions: preprocess, inference, postprocess. `workers.engine` runs them."""
