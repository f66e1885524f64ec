{{/*
The Gateway's name; the Deployment, Service and ServiceAccount are named like it, as istiod
names the objects of its own waypoints.
*/}}
{{- define "waypoint.name" -}}
{{- .Values.gateway.name | default .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Cluster-scoped objects: one per release, so the namespace is in the name. */}}
{{- define "waypoint.clusterName" -}}
{{- printf "rust-waypoint-%s-%s" .Release.Namespace (include "waypoint.name" .) | trunc 253 -}}
{{- end -}}

{{/* Helm's labels, on every object. */}}
{{- define "waypoint.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* What istiod selects a waypoint's pods by. */}}
{{- define "waypoint.selectorLabels" -}}
gateway.networking.k8s.io/gateway-name: {{ include "waypoint.name" . }}
{{- end -}}

{{/* RUST_LOG: the full filter when given, else the level. */}}
{{- define "waypoint.rustLog" -}}
{{- .Values.log.filter | default .Values.log.level -}}
{{- end -}}

{{/*
istiod's CA: the value, else istiod[-<revision>].<istiod's namespace>.svc:15012, as Istio's own
templates address it.
*/}}
{{- define "waypoint.caAddress" -}}
{{- if .Values.istio.caAddress -}}
{{- .Values.istio.caAddress -}}
{{- else -}}
{{- printf "istiod%s.%s.svc:15012" (include "waypoint.revisionSuffix" .) .Values.istio.namespace -}}
{{- end -}}
{{- end -}}

{{/* "-<revision>" for a revisioned control plane, else nothing. */}}
{{- define "waypoint.revisionSuffix" -}}
{{- with .Values.istio.revision }}-{{ . }}{{ end -}}
{{- end -}}

{{/* Istio's mesh ConfigMap: istio[-<revision>] in istiod's namespace unless the values say. */}}
{{- define "waypoint.meshConfigNamespace" -}}
{{- .Values.istio.meshConfig.namespace | default .Values.istio.namespace -}}
{{- end -}}
{{- define "waypoint.meshConfigName" -}}
{{- .Values.istio.meshConfig.name | default (printf "istio%s" (include "waypoint.revisionSuffix" .)) -}}
{{- end -}}

{{/* Istio's root namespace (the mesh config's rootNamespace; istiod's namespace by default). */}}
{{- define "waypoint.rootNamespace" -}}
{{- .Values.istio.rootNamespace | default .Values.istio.namespace -}}
{{- end -}}

{{/*
The namespaces, other than the release's own, where the waypoint may write policy status: the
root namespace and status.policyNamespaces, each once, as a list.
*/}}
{{- define "waypoint.policyStatusNamespaces" -}}
{{- $seen := list .Release.Namespace -}}
{{- $out := list -}}
{{- range prepend .Values.status.policyNamespaces (include "waypoint.rootNamespace" .) -}}
{{- if not (has . $seen) -}}
{{- $seen = append $seen . -}}
{{- $out = append $out . -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}
