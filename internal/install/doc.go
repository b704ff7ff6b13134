// Package install builds netdoctor's in-cluster objects (namespace,
// ServiceAccount, least-privilege RBAC, the agent DaemonSet and the probe
// target DaemonSet and Service) in Go, renders them as the YAML kept in
// deploy/ for GitOps users, and applies and removes them through the API.
package install
