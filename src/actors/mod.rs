//! Account actors and the registry that activates them.
