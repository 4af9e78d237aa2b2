# Make the Windows Time service synchronise now.
# w32tm by its full path: a fix's PATH is the contract's, not Windows' own
$w32tm = Join-Path ([Environment]::SystemDirectory) 'w32tm.exe'
$svc = Get-Service -Name W32Time -ErrorAction SilentlyContinue
if ($null -eq $svc) { [Console]::Error.WriteLine('the Windows Time service is not installed'); exit 1 }
if ($svc.StartType -eq 'Disabled') { Set-Service -Name W32Time -StartupType Manual }
if ($svc.Status -ne 'Running') { Start-Service -Name W32Time; Start-Sleep -Seconds 2 }
& $w32tm /resync /force
if ($LASTEXITCODE -ne 0) { [Console]::Error.WriteLine("w32tm /resync failed ($LASTEXITCODE)"); exit 1 }
& $w32tm /query /status
exit 0
