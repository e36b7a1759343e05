"""Database backend packages (Django loads ``<ENGINE>.base``)."""
