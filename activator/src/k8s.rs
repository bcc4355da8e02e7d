//! Kubernetes glue (see below).
