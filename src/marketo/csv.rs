//! Streaming readers and writers for Marketo bulk export and import files.
