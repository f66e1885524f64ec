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
