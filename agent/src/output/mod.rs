//! Writers for `model::Event`: text, JSON lines.
