# Passes when the service is running.
$name = [string]$env:BACKLINE_PARAM_SERVICE
if ($name -notmatch '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$') { Write-Output 'bad SERVICE'; exit 1 }
$svc = Get-Service -Name $name -ErrorAction SilentlyContinue
if ($null -ne $svc -and $svc.Status -eq 'Running') { Write-Output "$name is running"; exit 0 }
Write-Output "$name is not running"
exit 1
