"""Model building blocks shared by experiment families."""
