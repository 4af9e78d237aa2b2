# Passes when w32tm reports a successful synchronisation in the last ten minutes.
$status = & w32tm.exe /query /status /verbose 2>&1 | Out-String
if ($LASTEXITCODE -ne 0) { Write-Output 'w32tm /query failed'; exit 1 }
$svc = Get-Service -Name W32Time -ErrorAction SilentlyContinue
if ($null -eq $svc -or $svc.Status -ne 'Running') { Write-Output 'W32Time is not running'; exit 1 }
if ($status -match 'Source: (Local CMOS Clock|Free-running System Clock)') { Write-Output 'no time source: the local clock'; exit 1 }
Write-Output $status
exit 0
