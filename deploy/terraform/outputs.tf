output "rg_name" {
  description = "Resource group (as the seed's output: az aks get-credentials --resource-group)."
  value       = azurerm_resource_group.this.name
}

output "aks_name" {
  description = "Cluster name (az aks get-credentials --name)."
  value       = azurerm_kubernetes_cluster.this.name
}

output "acr_name" {
  description = "Registry name (az acr login --name)."
  value       = azurerm_container_registry.this.name
}

output "acr_login_server" {
  description = "Registry host for image names: ACR_LOGIN_SERVER/cserve:TAG."
  value       = azurerm_container_registry.this.login_server
}

output "oidc_issuer_url" {
  description = "For workload identity federation, should a pod ever need Azure credentials."
  value       = azurerm_kubernetes_cluster.this.oidc_issuer_url
}
