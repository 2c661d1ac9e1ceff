"""Worker side: the model cache and one block's read -> forward -> class masks -> polygons."""
