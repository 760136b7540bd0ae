# The AWS half on its own, so that `terraform init -plugin-dir` + `terraform validate` check it where only
# the AWS provider is at hand. The provider itself is configured by the caller.
terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0, < 7.0"
    }
  }
}
