"""Pydantic data contracts: event payloads in (``payloads``) and stored records (``records``)."""
