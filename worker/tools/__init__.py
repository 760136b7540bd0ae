"""Operator and command-line tooling: what ``python -m worker`` and the tests use, never the function.

Not uploaded: ``.gcloudignore`` and the plan module's file list (deploy/terraform/modules/plan/main.tf) both
leave ``worker/tools/`` out, and tests/unit/test_architecture.py checks that nothing the function ships imports
it at load time.
"""
