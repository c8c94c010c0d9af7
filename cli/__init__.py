"""The `thresher` command line: argument parsing only; the work lives in thresher.pipelines."""
