"""Cost terms: each turns a (src, tgt) batch pair into one (n_src, n_tgt) cost matrix."""
