# Pure computations of the deployment: no provider, no resource. The root module calls it, and the
# tests evaluate it with the terraform binary alone (tests/deploy/test_terraform_binary.py).
terraform {
  required_version = ">= 1.5"
}
