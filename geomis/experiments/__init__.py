"""The book's experiments as functions: Chapter 2's overlap study and Chapter 4's reproduction."""
