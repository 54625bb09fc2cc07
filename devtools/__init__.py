"""Development helpers (not shipped): a throwaway PostgreSQL for tests, demo and bench."""
