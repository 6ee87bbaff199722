{{/* Names and labels of the gateway (its own Deployment, ServiceAccount and RBAC). */}}
{{- define "deepserve.gateway.fullname" -}}
{{- printf "%s-gateway" (include "deepserve.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "deepserve.gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "deepserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "deepserve.gateway.labels" -}}
helm.sh/chart: {{ include "deepserve.chart" . }}
{{ include "deepserve.gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: deepserve
{{- end }}

{{- define "deepserve.gateway.keysNamespace" -}}
{{- default .Release.Namespace .Values.gateway.keysNamespace }}
{{- end }}

{{- define "deepserve.gateway.billingUrl" -}}
{{- printf "http://%s.%s.svc.%s:%d" (include "deepserve.billingServiceName" .) .Release.Namespace .Values.clusterDomain (int .Values.billing.service.port) }}
{{- end }}

{{- define "deepserve.gateway.tlsDir" -}}/var/run/secrets/deepserve/tls{{- end }}
{{- define "deepserve.gateway.redisDir" -}}/var/run/secrets/deepserve/redis{{- end }}
