# Restart one Windows service. The name comes from the environment only.
$ErrorActionPreference = 'Stop'
$name = [string]$env:BACKLINE_PARAM_SERVICE
if ($name -notmatch '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$') { [Console]::Error.WriteLine('refused: SERVICE must be a service name'); exit 64 }
$protected = @('RpcSs', 'RpcEptMapper', 'DcomLaunch', 'LSM', 'Winmgmt', 'SamSs', 'Power', 'PlugPlay', 'CryptSvc', 'EventLog', 'ProfSvc', 'gpsvc', 'TermService')
if ($protected -contains $name) { [Console]::Error.WriteLine("refused: restarting $name takes the machine or the session down"); exit 64 }
$svc = Get-Service -Name $name -ErrorAction SilentlyContinue
if ($null -eq $svc) { [Console]::Error.WriteLine("no such service: $name"); exit 66 }
try {
    Restart-Service -InputObject $svc -Force
    $svc.WaitForStatus('Running', [TimeSpan]::FromSeconds(60))
    Write-Output "$name restarted: $((Get-Service -Name $name).Status)"
    exit 0
} catch {
    [Console]::Error.WriteLine("restart of $name failed: $($_.Exception.Message)")
    exit 1
}
