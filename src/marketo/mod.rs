//! The Marketo REST and Bulk API client.
