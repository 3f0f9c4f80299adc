"""Data in: lead sources (a CRM export or a flat table) read, mapped, validated against the data contract and cached as typed tables."""
