{{/* Names, labels and the values every template shares. */}}

{{- define "deepserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-deepserve, or the release name when it already says deepserve. */}}
{{- define "deepserve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "deepserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "deepserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "deepserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "deepserve.labels" -}}
helm.sh/chart: {{ include "deepserve.chart" . }}
{{ include "deepserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: deepserve
{{- end }}

{{- define "deepserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "deepserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "deepserve.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "deepserve.engineImage" -}}
{{- printf "%s:%s" .Values.engine.image.repository (default .Chart.AppVersion .Values.engine.image.tag) }}
{{- end }}

{{/* The bearer-token Secret: an existing one, or the one this chart creates. */}}
{{- define "deepserve.tokenSecretName" -}}
{{- default (printf "%s-billing-token" (include "deepserve.fullname" .)) .Values.billing.token.existingSecret }}
{{- end }}

{{/* The Secret holding the ingest key (the signing key of per-model usage write
credentials): billing.token.ingestKeySecret, else the token Secret. */}}
{{- define "deepserve.ingestKeySecretName" -}}
{{- default (include "deepserve.tokenSecretName" .) .Values.billing.token.ingestKeySecret }}
{{- end }}

{{- define "deepserve.billingServiceName" -}}
{{- printf "%s-billing" (include "deepserve.fullname" .) }}
{{- end }}

{{- define "deepserve.usageEndpoint" -}}
{{- if .Values.billing.usageEndpoint }}
{{- .Values.billing.usageEndpoint }}
{{- else }}
{{- printf "http://%s.%s.svc.%s:%d/v1/usage/events" (include "deepserve.billingServiceName" .) .Release.Namespace .Values.clusterDomain (int .Values.billing.service.port) }}
{{- end }}
{{- end }}

{{- define "deepserve.pvcName" -}}
{{- default (printf "%s-ledger" (include "deepserve.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/* Where the operator keeps its state (the ledger) and reads the token. */}}
{{- define "deepserve.stateDir" -}}/var/lib/deepserve{{- end }}
{{- define "deepserve.ledgerPath" -}}/var/lib/deepserve/ledger.db{{- end }}
{{- define "deepserve.tokenDir" -}}/var/run/secrets/deepserve/billing{{- end }}
{{- define "deepserve.ingestKeyDir" -}}/var/run/secrets/deepserve/ingest{{- end }}

{{/* Fail early on combinations the schema cannot express. */}}
{{- define "deepserve.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.operator.peering.enabled) }}
{{- fail "replicaCount > 1 needs operator.peering.enabled=true: without leader election two operators would both act" }}
{{- end }}
{{- if and .Values.operator.peering.enabled .Values.operator.watchNamespaces }}
{{- fail "operator.watchNamespaces with operator.peering.enabled needs kopf's namespaced KopfPeering CRD, which deepserve does not ship: set operator.peering.enabled=false and replicaCount=1, or watch all namespaces" }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) .Values.persistence.enabled (has "ReadWriteOncePod" .Values.persistence.accessModes) }}
{{- fail "persistence.accessModes ReadWriteOncePod allows one pod only: set replicaCount to 1 or use ReadWriteOnce" }}
{{- end }}
{{- if and .Values.operator.gatewayApi.parentName (not .Values.operator.gatewayApi.parentNamespace) }}
{{- fail "operator.gatewayApi.parentNamespace is required when operator.gatewayApi.parentName is set" }}
{{- end }}
{{- end }}
