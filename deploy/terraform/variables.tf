variable "subscription_id" {
  description = "Azure subscription to deploy into."
  type        = string
}

variable "name" {
  description = "Name stem for every resource (resource group rg-NAME, cluster aks-NAME, registry crNAME without dashes)."
  type        = string
  default     = "cserve"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.name))
    error_message = "name: 2-21 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "location" {
  description = "Azure region."
  type        = string
  default     = "westeurope"
}

variable "kubernetes_version" {
  description = "AKS Kubernetes version (null: the region's default). The manifests are validated against 1.30-1.33."
  type        = string
  default     = null
}

variable "aks_sku_tier" {
  description = "AKS control plane tier: Free (no SLA; dev) or Standard (uptime SLA; prod)."
  type        = string
  default     = "Standard"
}

variable "zones" {
  description = "Availability zones for both node pools (empty in regions without zones)."
  type        = list(string)
  default     = ["1", "2", "3"]
}

variable "system_vm_size" {
  description = "VM size of the system node pool (cluster add-ons, Prometheus, KEDA)."
  type        = string
  default     = "Standard_D2ds_v5"
}

variable "system_min_count" {
  type    = number
  default = 2
}

variable "system_max_count" {
  type    = number
  default = 3
}

variable "user_vm_size" {
  description = "VM size of the user node pool that runs cserve pods (2 CPUs each in the prod overlay). AVX-512 sizes (Dsv5/Ddsv5, Intel) run cserve's widest kernels."
  type        = string
  default     = "Standard_D4ds_v5"
}

variable "user_min_count" {
  description = "Fewest user nodes; the cluster autoscaler adds nodes when the HPA's pods do not fit."
  type        = number
  default     = 1
}

variable "user_max_count" {
  type    = number
  default = 5
}

variable "acr_sku" {
  description = "Container registry tier. Premium adds private endpoints, geo-replication and retention policies (see the checkov notes in main.tf)."
  type        = string
  default     = "Standard"
}

variable "api_server_authorized_ip_ranges" {
  description = "CIDRs allowed to reach the Kubernetes API server (your office, your CI)."
  type        = list(string)
}

variable "admin_group_object_ids" {
  description = "Microsoft Entra ID groups whose members administer the cluster."
  type        = list(string)
  default     = []
}

variable "log_retention_days" {
  type    = number
  default = 30
}

variable "enable_prometheus" {
  description = "Install kube-prometheus-stack (Prometheus + the ServiceMonitor CRD that deploy/k8s/monitoring uses)."
  type        = bool
  default     = true
}

variable "enable_prometheus_adapter" {
  description = "Install Prometheus Adapter with cserve's rules (the HPA of deploy/k8s/overlays/prod). Needs enable_prometheus."
  type        = bool
  default     = true
}

variable "enable_keda" {
  description = "Install KEDA (deploy/k8s/overlays/prod-keda) instead of relying on Prometheus Adapter."
  type        = bool
  default     = false
}

variable "kube_prometheus_stack_version" {
  type    = string
  default = "79.5.0"
}

variable "prometheus_adapter_version" {
  type    = string
  default = "5.2.0"
}

variable "keda_version" {
  type    = string
  default = "2.18.1"
}

variable "tags" {
  type    = map(string)
  default = { app = "cserve" }
}
