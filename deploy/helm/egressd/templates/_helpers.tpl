{{/* The chart's name, or nameOverride. */}}
{{- define "egressd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name (63 characters at most): fullnameOverride, else the release name
when it already contains the chart name, else <release>-<chart>.
*/}}
{{- define "egressd.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "egressd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "egressd.labels" -}}
helm.sh/chart: {{ include "egressd.chart" . }}
{{ include "egressd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/component: node-agent
app.kubernetes.io/part-of: egressd
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The DaemonSet's selector: never change these on an installed release. */}}
{{- define "egressd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "egressd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "egressd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "egressd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "egressd.policyConfigMapName" -}}
{{- default (printf "%s-policies" (include "egressd.fullname" .)) .Values.policyConfigMap.name | trunc 253 }}
{{- end }}

{{- define "egressd.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The directory of the control socket, mounted from the host or an emptyDir. */}}
{{- define "egressd.controlDir" -}}
{{- dir .Values.controlSocket.path }}
{{- end }}
