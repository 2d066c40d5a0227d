"""Instructor tooling: student versions, sandboxed grading and scoring (not needed by students)."""
