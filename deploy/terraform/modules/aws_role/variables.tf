variable "role_name" {
  description = "Name of the IAM role the worker assumes."
  type        = string
}

variable "service_account_email" {
  description = "The worker's Google service account (named in the role's description)."
  type        = string
}

variable "service_account_unique_id" {
  description = "The worker's service account's numeric unique ID: the token's azp (accounts.google.com:aud) and sub."
  type        = string
}

variable "audience" {
  description = "The ID token's aud (accounts.google.com:oaud), ID_TOKEN_AUDIENCE of the function."
  type        = string
}

variable "data_bucket" {
  description = "The S3 bucket the worker may read."
  type        = string
}

variable "prefixes" {
  description = "Key prefixes in data_bucket the role may list and read; [\"\"] is the whole bucket."
  type        = list(string)
}
