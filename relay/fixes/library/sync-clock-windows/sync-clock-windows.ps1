# Make the Windows Time service synchronise now.
$svc = Get-Service -Name W32Time -ErrorAction SilentlyContinue
if ($null -eq $svc) { Write-Error 'the Windows Time service is not installed'; exit 1 }
if ($svc.StartType -eq 'Disabled') { Set-Service -Name W32Time -StartupType Manual }
if ($svc.Status -ne 'Running') { Start-Service -Name W32Time; Start-Sleep -Seconds 2 }
& w32tm.exe /resync /force
if ($LASTEXITCODE -ne 0) { Write-Error "w32tm /resync failed ($LASTEXITCODE)"; exit 1 }
& w32tm.exe /query /status
exit 0
