//! The `modcdn` command's tools, outside the server crates: a whole local
//! cluster of edges and origins (`modcdn cluster`), and warming a cluster
//! with what a list of modules needs (`modcdn prewarm`).

pub mod cluster;
pub mod prewarm;
pub mod seaweedfs;
