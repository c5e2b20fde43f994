//! What paynotify writes about a notification: the envelope that carries its
//! raw bytes through the queue and the archive, the pointer that names an
//! archived one, and the archive segments that hold many.

pub mod envelope;
pub mod segment;
