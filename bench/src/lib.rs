//! skiff-bench (issue "Benchmark harness"): cold-start measurements of lazy pulling against a full pull on
//! shaped networks. It drives skiff and containerd like a user does and knows none of their internals.
//!
//! Nothing is implemented here yet; the crate exists so the workspace has its final shape.
