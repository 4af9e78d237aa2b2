# Passes when every old file left in the Windows temporary folder is one in use.
$age = 0
if (-not [int]::TryParse([string]$env:BACKLINE_PARAM_AGE_DAYS, [ref]$age)) { Write-Output 'bad AGE_DAYS'; exit 1 }
# from the OS, not from %SystemRoot%: a fix's environment holds only the contract's variables
$windows = [Environment]::GetFolderPath('Windows')
if (-not $windows -or -not [IO.Path]::IsPathRooted($windows)) { [Console]::Error.WriteLine('cannot find the Windows folder'); exit 1 }
$root = Join-Path $windows 'Temp'
$cutoff = (Get-Date).AddDays(-$age)
$left = @(Get-ChildItem -LiteralPath $root -Recurse -File -Force -Attributes !ReparsePoint -ErrorAction SilentlyContinue |
    Where-Object { $_.LastWriteTime -lt $cutoff })
$locked = 0
foreach ($f in $left) {
    try { $s = [IO.File]::Open($f.FullName, 'Open', 'ReadWrite', 'None'); $s.Close(); Write-Output "old file not in use remains: $($f.FullName)"; exit 1 }
    catch { $locked++ }
}
Write-Output "no old file left in $root but $locked in use"
exit 0
