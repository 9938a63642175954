# AKS + ACR for cserve: what the seed's infra/azure/terraform creates, minus the KubeRay
# operator (cserve needs no operator: a Deployment, a Service and an HPA do what the
# RayService's head and worker groups did; see addons.tf for what replaces the Helm release).

locals {
  # registry names: 5-50 alphanumerics, globally unique
  acr_name = substr("cr${replace(var.name, "-", "")}${substr(md5(data.azurerm_client_config.current.subscription_id), 0, 6)}", 0, 50)
}

resource "azurerm_resource_group" "this" {
  name     = "rg-${var.name}"
  location = var.location
  tags     = var.tags
}

resource "azurerm_log_analytics_workspace" "this" {
  name                = "log-${var.name}"
  location            = azurerm_resource_group.this.location
  resource_group_name = azurerm_resource_group.this.name
  sku                 = "PerGB2018"
  retention_in_days   = var.log_retention_days
  tags                = var.tags
}

resource "azurerm_container_registry" "this" {
  #checkov:skip=CKV_AZURE_139:Images are pushed from developer machines and CI outside the virtual network; a private endpoint needs the Premium tier (acr_sku).
  #checkov:skip=CKV_AZURE_164:Content trust (signed images) needs the Premium tier; releases pin the image by digest in the overlay instead (kustomize edit set image).
  #checkov:skip=CKV_AZURE_165:Geo-replication needs the Premium tier; one region serves one cluster.
  #checkov:skip=CKV_AZURE_166:Quarantine needs the Premium tier and an external scanner to release images.
  #checkov:skip=CKV_AZURE_167:Retention of untagged manifests needs the Premium tier.
  #checkov:skip=CKV_AZURE_233:Zone redundancy needs the Premium tier.
  #checkov:skip=CKV_AZURE_237:Dedicated data endpoints need the Premium tier.
  name                = local.acr_name
  resource_group_name = azurerm_resource_group.this.name
  location            = azurerm_resource_group.this.location
  sku                 = var.acr_sku
  # pulls use the kubelet's managed identity (AcrPull below), pushes use `az acr login`
  admin_enabled = false
  tags          = var.tags
}

resource "azurerm_kubernetes_cluster" "this" {
  #checkov:skip=CKV_AZURE_115:A private API server needs a VPN or jump host to run kubectl; access is limited to api_server_authorized_ip_ranges instead.
  #checkov:skip=CKV_AZURE_6:The ranges come from var.api_server_authorized_ip_ranges, which has no default (every apply must give them), so checkov sees no value.
  #checkov:skip=CKV_AZURE_117:A customer-managed disk encryption key (Key Vault + disk encryption set) is optional; disks are encrypted with platform keys.
  name                      = "aks-${var.name}"
  location                  = azurerm_resource_group.this.location
  resource_group_name       = azurerm_resource_group.this.name
  dns_prefix                = var.name
  kubernetes_version        = var.kubernetes_version
  sku_tier                  = var.aks_sku_tier
  automatic_upgrade_channel = "patch"
  node_os_upgrade_channel   = "NodeImage"

  # Entra ID users and Azure RBAC only: no static admin credentials to leak
  local_account_disabled            = true
  role_based_access_control_enabled = true
  azure_active_directory_role_based_access_control {
    azure_rbac_enabled     = true
    admin_group_object_ids = var.admin_group_object_ids
  }

  api_server_access_profile {
    authorized_ip_ranges = var.api_server_authorized_ip_ranges
  }

  azure_policy_enabled      = true
  oidc_issuer_enabled       = true
  workload_identity_enabled = true

  key_vault_secrets_provider {
    secret_rotation_enabled = true
  }

  oms_agent {
    log_analytics_workspace_id = azurerm_log_analytics_workspace.this.id
  }

  # The system pool runs only cluster add-ons (CriticalAddonsOnly taint); cserve pods go to
  # the user pool below.
  default_node_pool {
    name                         = "system"
    vm_size                      = var.system_vm_size
    auto_scaling_enabled         = true
    min_count                    = var.system_min_count
    max_count                    = var.system_max_count
    only_critical_addons_enabled = true
    max_pods                     = 50
    os_disk_type                 = "Ephemeral"
    os_disk_size_gb              = 64
    host_encryption_enabled      = true
    zones                        = var.zones
    temporary_name_for_rotation  = "systemtmp"

    upgrade_settings {
      max_surge = "33%"
    }
  }

  identity {
    type = "SystemAssigned"
  }

  # Azure CNI powered by Cilium: it enforces deploy/k8s's NetworkPolicy (8265 only from the
  # namespace); kubenet without a policy engine would silently ignore it.
  network_profile {
    network_plugin      = "azure"
    network_plugin_mode = "overlay"
    network_data_plane  = "cilium"
    network_policy      = "cilium"
    load_balancer_sku   = "standard"
  }

  tags = var.tags
}

# The pool that runs cserve: scaled by the cluster autoscaler when the HPA's (or KEDA's)
# pods no longer fit. The label is what the prod overlay's nodeSelector asks for.
resource "azurerm_kubernetes_cluster_node_pool" "user" {
  name                    = "cserve"
  kubernetes_cluster_id   = azurerm_kubernetes_cluster.this.id
  vm_size                 = var.user_vm_size
  mode                    = "User"
  auto_scaling_enabled    = true
  min_count               = var.user_min_count
  max_count               = var.user_max_count
  max_pods                = 50
  os_disk_type            = "Ephemeral"
  os_disk_size_gb         = 64
  host_encryption_enabled = true
  zones                   = var.zones
  node_labels = {
    workload = "cserve"
  }

  upgrade_settings {
    max_surge = "33%"
  }

  tags = var.tags
}

# The kubelet pulls images from the registry with its managed identity: no pull secret.
resource "azurerm_role_assignment" "kubelet_acr_pull" {
  scope                            = azurerm_container_registry.this.id
  role_definition_name             = "AcrPull"
  principal_id                     = azurerm_kubernetes_cluster.this.kubelet_identity[0].object_id
  skip_service_principal_aad_check = true
}

# Whoever runs terraform administers the cluster (the helm releases in addons.tf need it).
resource "azurerm_role_assignment" "deployer_cluster_admin" {
  scope                = azurerm_kubernetes_cluster.this.id
  role_definition_name = "Azure Kubernetes Service RBAC Cluster Admin"
  principal_id         = data.azurerm_client_config.current.object_id
}
