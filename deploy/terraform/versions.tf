# Terraform and provider versions, pinned: `terraform init` picks the newest release within
# each constraint and records it in .terraform.lock.hcl (commit that file in the repository
# that applies this configuration).
terraform {
  required_version = ">= 1.5.0, < 2.0.0"

  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = "~> 4.14"
    }
    # 2.x: the `kubernetes { }` block and `set { }` blocks below are 2.x syntax (3.x changed both)
    helm = {
      source  = "hashicorp/helm"
      version = "~> 2.17"
    }
  }
}
