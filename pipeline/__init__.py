"""imgpipe: a versioned DVC pipeline from labelled image folders to a trained Keras CNN."""
