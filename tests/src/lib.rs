//! Harness for the end-to-end suite: starts real daemons in temporary folders (issue 4 fills it in).
