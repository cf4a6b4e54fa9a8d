//! The demo CRM: a small CRM schema with sample data, on SQLite, PostgreSQL or MariaDB.
