# What replaces the seed's helm_release "kuberay_operator": nothing has to manage cserve
# itself (it is a plain Deployment), so the cluster only gets the optional metrics and
# autoscaling stack that deploy/k8s's ServiceMonitor, HPA and ScaledObject use.

resource "helm_release" "kube_prometheus_stack" {
  count            = var.enable_prometheus ? 1 : 0
  name             = "kube-prometheus-stack"
  repository       = "https://prometheus-community.github.io/helm-charts"
  chart            = "kube-prometheus-stack"
  version          = var.kube_prometheus_stack_version
  namespace        = "monitoring"
  create_namespace = true
  # the add-ons run on the system pool, which only tolerating pods may use
  values = [yamlencode({
    prometheus = {
      prometheusSpec = {
        tolerations = [{ key = "CriticalAddonsOnly", operator = "Exists" }]
      }
    }
  })]

  depends_on = [azurerm_role_assignment.deployer_cluster_admin, azurerm_kubernetes_cluster_node_pool.user]
}

# Serves ray_serve_num_ongoing_http_requests to the HPA (custom.metrics.k8s.io) with the
# rule kept next to the HPA in deploy/k8s.
resource "helm_release" "prometheus_adapter" {
  count      = var.enable_prometheus && var.enable_prometheus_adapter ? 1 : 0
  name       = "prometheus-adapter"
  repository = "https://prometheus-community.github.io/helm-charts"
  chart      = "prometheus-adapter"
  version    = var.prometheus_adapter_version
  namespace  = "monitoring"
  values     = [file("${path.module}/../k8s/autoscaling/prometheus-adapter/prometheus-adapter-values.yaml")]

  depends_on = [helm_release.kube_prometheus_stack]
}

resource "helm_release" "keda" {
  count            = var.enable_keda ? 1 : 0
  name             = "keda"
  repository       = "https://kedacore.github.io/charts"
  chart            = "keda"
  version          = var.keda_version
  namespace        = "keda"
  create_namespace = true

  depends_on = [azurerm_role_assignment.deployer_cluster_admin, azurerm_kubernetes_cluster_node_pool.user]
}
