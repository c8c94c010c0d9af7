"""Built-in stage plugins, registered under the `thresher.stages` entry-point group."""
