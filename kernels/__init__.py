"""Pure torch kernels of Edicho: matching, resizing, warping, fusion. Never imports the host."""
