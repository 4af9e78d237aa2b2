# Passes when the Windows Time service runs and takes its time from a real source
# (not the local CMOS or free-running clock).
# w32tm by its full path: a fix's PATH is the contract's, not Windows' own
$w32tm = Join-Path ([Environment]::SystemDirectory) 'w32tm.exe'
$status = & $w32tm /query /status /verbose 2>&1 | Out-String
if ($LASTEXITCODE -ne 0) { Write-Output 'w32tm /query failed'; exit 1 }
$svc = Get-Service -Name W32Time -ErrorAction SilentlyContinue
if ($null -eq $svc -or $svc.Status -ne 'Running') { Write-Output 'W32Time is not running'; exit 1 }
if ($status -match 'Source: (Local CMOS Clock|Free-running System Clock)') { Write-Output 'no time source: the local clock'; exit 1 }
Write-Output $status
exit 0
