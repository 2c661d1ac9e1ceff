"""Read one scene: open and validate it, read a window with its validity mask and normalize it, plan its blocks."""
