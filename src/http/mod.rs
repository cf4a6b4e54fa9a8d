//! The HTTP side: webhooks, health, metrics and the status page.
